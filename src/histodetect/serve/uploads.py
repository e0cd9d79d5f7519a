"""What clients send: patch files (sniffed, size-checked, then decoded in memory by `predict`'s
own decoding, `decode_buffers`), slide files, and slide names inside --slides-dir (never a path outside it)."""

from __future__ import annotations

import io
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from histodetect.serve.http_errors import ApiError, api_wording
from histodetect.serve.limits import ServeLimits

if TYPE_CHECKING:
    from starlette.requests import Request

MAGIC_SUFFIXES = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"II+\x00", ".tif"),  # BigTIFF
    (b"MM\x00+", ".tif"),
)
"""Leading bytes of the formats accepted, and the suffix a file of that format is saved with:
the content decides, never the name a client gives."""
FORMATS_TEXT = "PNG, JPEG or TIFF"
TIFF_SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8")
"""TIFF-based slide suffixes kept from the client's name (the reader picks its backend by them)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    name: str
    data: bytes


def client_name(name: str | None) -> str:
    """The file name a client sent, without any folders (browsers may send paths)."""
    return PurePosixPath((name or "").replace("\\", "/")).name or "upload"


def patch_id(name: str) -> str:
    """Id of an uploaded patch: its file name without extension, as `predict` gives."""
    return PurePosixPath(client_name(name)).stem or client_name(name)


def sniff_suffix(data: bytes) -> str | None:
    """Suffix of the format `data` starts with (.png, .jpg, .tif), or None."""
    return next((suffix for magic, suffix in MAGIC_SUFFIXES if data.startswith(magic)), None)


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n", ""})
PATCH_FORM_FIELDS = ("files", "resize", "center_crop")
"""Fields of POST /v1/predict's form; others are refused, naming them."""


async def read_patch_form(request: Request, limits: ServeLimits) -> tuple[list[Upload], bool, bool]:
    """The uploads and the resize / center_crop flags of a POST /v1/predict form.

    Parsed here rather than by FastAPI's form dependencies, which cost this hot route about a
    fifth of its CPU per request; the sentences are the ones the other routes give.

    Raises:
        ApiError: 413 for more files than `limits.max_images`, 422 for a missing or non-file
            'files', a flag that is not a boolean, an unknown field, or a body that is not a
            multipart form.
    """
    from starlette.exceptions import HTTPException

    try:
        form = await request.form(max_files=limits.max_images + 1, max_fields=16)
    except HTTPException as exc:  # starlette's parser refuses: too many parts, a garbled body
        if "Too many files" in str(exc.detail):
            raise ApiError(413, _too_many_files(f"more than {limits.max_images}", limits)) from None
        raise ApiError(422, f"the multipart form cannot be read ({exc.detail}).") from None
    try:
        unknown = sorted(set(form.keys()) - set(PATCH_FORM_FIELDS))
        if unknown:
            raise ApiError(
                422, f"the form field {unknown[0]!r} is not one of {', '.join(PATCH_FORM_FIELDS)}."
            )
        files = form.getlist("files")
        if not files:
            raise ApiError(
                422, "the form field 'files' is missing (send the files as multipart form data)."
            )
        if any(isinstance(item, str) for item in files):
            raise ApiError(422, "the form field 'files' must hold files, not text.")
        flags = [_form_flag(form.get(name), name) for name in ("resize", "center_crop")]
        uploads = [Upload(item.filename or "", await item.read()) for item in files]  # type: ignore[union-attr]
    finally:
        await form.close()
    return uploads, flags[0], flags[1]


def _form_flag(value: object, name: str) -> bool:
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ApiError(422, f"the field {name!r} is not valid: send true or false.")


def _too_many_files(count: str, limits: ServeLimits) -> str:
    return (
        f"{count} files in one request; this server takes at most {limits.max_images} "
        "(--max-images): split them over several requests."
    )


def decode_patches(
    uploads: list[Upload],
    size_px: int,
    limits: ServeLimits,
    resize: bool = False,
    center_crop: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Ids and uint8 (n, size_px, size_px, 3) pixels of uploaded patch files, in order.

    Raises:
        ApiError: 413 for too many files or pixels, 415 for content that is not PNG, JPEG or
            TIFF, 422 for a file that cannot be decoded or has the wrong size (naming it).
    """
    from histodetect.inference.inputs import decode_buffers

    _check_request(uploads, limits, resize, center_crop)
    total = sum(check_patch_file(upload, limits)[1] for upload in uploads)
    if total > limits.max_request_pixels:
        raise ApiError(
            413, f"the {len(uploads)} files hold {total:,} pixels together, more than this "
            f"server decodes for one request ({limits.max_request_pixels:,}); send fewer.",
        )  # fmt: skip
    names = [client_name(upload.name) for upload in uploads]
    files = [(name, upload.data) for name, upload in zip(names, uploads, strict=True)]
    batch = decode_buffers(files, size_px, resize=resize, center_crop=center_crop)
    for name, error in zip(names, batch.errors, strict=True):
        if error is not None:
            raise ApiError(422, f"{name} {api_wording(error)}.", name)
    return [patch_id(upload.name) for upload in uploads], batch.pixels


def _check_request(
    uploads: list[Upload], limits: ServeLimits, resize: bool, center_crop: bool
) -> None:
    if not uploads:
        raise ApiError(422, "the request holds no files; send patches in the form field 'files'.")
    if len(uploads) > limits.max_images:
        raise ApiError(413, _too_many_files(str(len(uploads)), limits))
    if resize and center_crop:
        raise ApiError(422, "choose one of resize and center_crop, not both.")


def check_patch_file(upload: Upload, limits: ServeLimits) -> tuple[str, int]:
    """The suffix for an upload's content and its pixel count (0 when its header is not
    readable: decoding will say why), after checking its format and size.

    Raises:
        ApiError: 422 empty, 415 not PNG/JPEG/TIFF, 413 more than `max_image_pixels` pixels.
    """
    name = client_name(upload.name)
    if not upload.data:
        raise ApiError(422, f"{name} is empty (0 bytes).", name)
    suffix = sniff_suffix(upload.data)
    if suffix is None:
        raise ApiError(
            415, f"{name} is not a {FORMATS_TEXT} image (judged by its content, not its name).",
            name,
        )  # fmt: skip
    pixels = image_pixels(upload.data)
    if pixels is not None and pixels[0] > limits.max_image_pixels:
        raise ApiError(
            413, f"{name} is {pixels[1]}, more than this server decodes "
            f"({limits.max_image_pixels:,} pixels); send patches, or a whole slide to /v1/slides.",
            name,
        )  # fmt: skip
    return suffix, pixels[0] if pixels is not None else 0


def image_pixels(data: bytes) -> tuple[int, str] | None:
    """Pixel count and its description ("2000x1000 px") from an image's header, without
    decoding the pixels; None when no reader recognises the header."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the count is checked by the caller
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                return width * height, f"{width}x{height} px"
    except Image.DecompressionBombError:
        return sys.maxsize, "larger than Pillow's decompression-bomb limit"
    except Exception:
        pass
    try:  # TIFFs Pillow cannot open (16-bit RGB and other layouts) may still be read by tifffile
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            width, height = int(page.imagewidth), int(page.imagelength)
            return width * height, f"{width}x{height} px"
    except Exception:
        return None


# ----------------------------------------------------------------------------- slides


def slide_suffix(head: bytes, name: str) -> str:
    """Suffix to save an uploaded slide with, from its first bytes (and its name for TIFFs).

    Raises:
        ApiError: 415 when the content is not TIFF-based, PNG or JPEG.
    """
    suffix = sniff_suffix(head)
    if suffix is None:
        raise ApiError(
            415, f"{name} is not a slide this server takes by upload: a TIFF-based slide (.tif, "
            ".svs, .ndpi, OME-TIFF) or a PNG/JPEG image, judged by its content.", name,
        )  # fmt: skip
    given = PurePosixPath(name).suffix.lower()
    return given if suffix == ".tif" and given in TIFF_SLIDE_SUFFIXES else suffix


def safe_stem(name: str) -> str:
    """A file-system-safe stem for a client's file name (letters, digits, . _ -)."""
    stem = _UNSAFE.sub("_", PurePosixPath(client_name(name)).stem).strip("._")
    return (stem or "slide")[:100]


def resolve_slide_name(folder: Path, name: str) -> Path:
    """The file `name` inside `folder`, refusing anything that leads elsewhere.

    Refused: absolute paths, `..`, backslashes, hidden names, and any symbolic link on the way
    (a link could point outside the folder).

    Raises:
        ApiError: 422 for a name that leaves the folder, 404 for one that is not there.
    """
    parts = PurePosixPath(name).parts
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or PurePosixPath(name).is_absolute()
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
    ):
        raise ApiError(
            422, f"slide name {name!r} must be a relative path inside the server's --slides-dir "
            "(no '..', no absolute paths).", name,
        )  # fmt: skip
    try:
        return _existing_slide(folder, parts, name)
    except OSError as exc:  # a name too long for the file system, a folder that cannot be read
        raise ApiError(
            422, f"slide name {name[:200]!r} cannot be used ({exc.strerror}).", name
        ) from None


def _existing_slide(folder: Path, parts: tuple[str, ...], name: str) -> Path:
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ApiError(
                422, f"slide {name} is a symbolic link; the server only opens files inside "
                "--slides-dir itself.", name,
            )  # fmt: skip
    if not path.is_file() and not (path.is_dir() and path.suffix.lower() == ".mrxs"):
        raise ApiError(404, f"there is no slide {name} in the server's --slides-dir.", name)
    return path


def list_slides(folder: Path, limit: int = 1000) -> list[str]:
    """Names of the files in `folder` (recursively, no hidden ones or links), sorted."""
    names = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.is_symlink():
            continue
        if path.is_file():
            names.append(relative.as_posix())
        if len(names) >= limit:
            break
    return names
