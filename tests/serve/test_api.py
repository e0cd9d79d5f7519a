"""The API on real PCam patches: the same numbers as `histodetect predict`, explanations, the
model, the page, and every kind of bad input answered with a JSON sentence (never a 500)."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from histodetect.cli.main import main
from histodetect.serve.limits import ServeLimits
from imagefiles import random_patch
from serve.conftest import upload


def cli_probabilities(paths: list[Path], out: Path) -> dict[str, float]:
    """id -> probability as `histodetect predict` writes them (6 decimals)."""
    assert (
        main(["predict", *map(str, paths), "--out", str(out), "--no-progress", "--device", "cpu"])
        == 0
    )
    with out.open() as f:
        return {row["id"]: float(row["label"]) for row in csv.DictReader(f)}


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 64)), (b"IEND", b"")]
    body = b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )
    return b"\x89PNG\r\n\x1a\n" + body


def test_predict_equals_the_cli_on_real_patches(
    make_client: Any, valid_patches: list[Path], tmp_path: Path
) -> None:
    client = make_client()
    response = client.post("/v1/predict", files=[upload(p) for p in valid_patches])
    assert response.status_code == 200, response.text
    body = response.json()
    served = {row["id"]: row for row in body["predictions"]}
    assert [row["id"] for row in body["predictions"]] == [p.stem for p in valid_patches]
    expected = cli_probabilities(valid_patches, tmp_path / "cli.csv")
    for patch_id, probability in expected.items():
        assert served[patch_id]["probability"] == pytest.approx(probability, abs=1e-6)
        label = int(served[patch_id]["probability"] >= body["model"]["threshold"])
        assert served[patch_id]["class"] == label
        assert served[patch_id]["class_name"] == ("normal", "tumour")[label]
    assert body["model"]["name"] and body["model"]["file"] == "model.pt"
    # the real patches carry signal: tumour ones score higher on average
    by_class = {
        c: [served[p.stem]["probability"] for p in valid_patches if p.parent.name == c]
        for c in "01"
    }
    assert np.mean(by_class["1"]) > np.mean(by_class["0"])


def test_content_decides_not_the_name(make_client: Any, valid_patches: list[Path]) -> None:
    client = make_client()
    jpeg = valid_patches[0]
    named = client.post("/v1/predict", files=[upload(jpeg, "looks-like.png")])
    proper = client.post("/v1/predict", files=[upload(jpeg)])
    assert named.status_code == 200
    assert named.json()["predictions"][0]["id"] == "looks-like"
    # The same image (oneDNN's fused fp32 graph may differ in the last bits between batches)
    assert named.json()["predictions"][0]["probability"] == pytest.approx(
        proper.json()["predictions"][0]["probability"], abs=1e-6
    )
    folders = client.post("/v1/predict", files=[upload(jpeg, "C:\\scans\\../x/y.jpg")])
    assert folders.json()["predictions"][0]["id"] == "y"


def test_resize_and_center_crop_fields(make_client: Any, rng: np.random.Generator) -> None:
    client = make_client()
    big = ("files", ("big.png", png_bytes(random_patch(rng, 128)), "image/png"))
    refused = client.post("/v1/predict", files=[big])
    assert refused.status_code == 422
    assert refused.json()["file"] == "big.png"
    assert "128x128" in refused.json()["error"] and "resize=true" in refused.json()["error"]
    assert client.post("/v1/predict", files=[big], data={"resize": "true"}).status_code == 200
    assert client.post("/v1/predict", files=[big], data={"center_crop": "true"}).status_code == 200
    both = client.post("/v1/predict", files=[big], data={"resize": "true", "center_crop": "true"})
    assert both.status_code == 422
    zero = client.post("/v1/predict", files=[big], data={"resize": "0"})
    assert zero.status_code == 422 and "128x128" in zero.json()["error"]  # "0" is false


def test_form_fields_are_checked_with_sentences(
    make_client: Any, valid_patches: list[Path]
) -> None:
    client = make_client()
    one = [upload(valid_patches[0])]
    maybe = client.post("/v1/predict", files=one, data={"resize": "maybe"})
    assert maybe.status_code == 422 and "'resize'" in maybe.json()["error"]
    unknown = client.post("/v1/predict", files=one, data={"treshold": "0.3"})
    assert unknown.status_code == 422 and "'treshold'" in unknown.json()["error"]
    text = client.post("/v1/predict", data={"files": "not a file"})
    assert text.status_code == 422 and "must hold files" in text.json()["error"]
    # the hand-written form is what /docs shows: files as a binary array, two boolean flags
    body = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["files"]
    assert schema["properties"]["files"]["items"]["format"] == "binary"
    assert {schema["properties"][f]["type"] for f in ("resize", "center_crop")} == {"boolean"}
    response = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["responses"]
    assert "PredictResponse" in str(response["200"]) and "413" in response


def test_explain_refuses_a_second_file_or_another_field(
    make_client: Any, valid_patches: list[Path]
) -> None:
    """From a bad-input hunt: two 'file' fields gave the first one's Grad-CAM with no word of
    the second, where /v1/predict refuses what it does not take."""
    client = make_client()
    two = [upload(valid_patches[0], field="file"), upload(valid_patches[1], field="file")]
    response = client.post("/v1/explain", files=two)
    assert response.status_code == 422 and "one patch per request" in response.json()["error"]
    extra = client.post("/v1/explain", files=[upload(valid_patches[0], field="file")],
                        data={"resize": "true"})  # fmt: skip
    assert extra.status_code == 422 and "'resize' is not 'file'" in extra.json()["error"]


def test_explain_gives_probability_and_overlay(make_client: Any, valid_patches: list[Path]) -> None:
    client = make_client()
    patch = valid_patches[-1]
    response = client.post("/v1/explain", files=[upload(patch, field="file")])
    assert response.status_code == 200, response.text
    body = response.json()
    predicted = client.post("/v1/predict", files=[upload(patch)]).json()["predictions"][0]
    assert body["prediction"] == predicted
    import base64

    for key in ("patch_png", "overlay_png"):
        assert body[key].startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(body[key].split(",", 1)[1])))
        assert image.size == (96, 96)
    patch_px = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["patch_png"].split(",")[1]))))
    overlay_px = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(body["overlay_png"].split(",")[1])))
    )
    assert np.array_equal(patch_px, np.asarray(Image.open(patch).convert("RGB")))
    assert not np.array_equal(patch_px, overlay_px)  # the heat is drawn over it


def test_model_health_page_and_docs(make_client: Any) -> None:
    client = make_client()
    model = client.get("/v1/model").json()
    assert model["spec"]["model_name"] == model["model"]["name"]
    assert model["model"]["threshold"] == model["spec"]["threshold"]
    assert model["mpp"] > 0 and model["patch_size_px"] == 96
    assert isinstance(model["model_card"], dict)
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and '<input id="files"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    # the page and its assets load nothing from elsewhere
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


BAD_FILES = [
    pytest.param(b"just some text", 415, "is not a PNG, JPEG or TIFF", id="text"),
    pytest.param(b"GIF89a" + bytes(40), 415, "is not a PNG, JPEG or TIFF", id="gif"),
    pytest.param(b"", 422, "is empty", id="empty"),
    pytest.param(b"\x89PNG\r\n\x1a\n garbage", 422, "cannot be read", id="broken-png"),
    pytest.param(png_header_only(100_000, 100_000), 413, "decompression-bomb", id="bomb"),
    pytest.param(png_header_only(5000, 5000), 413, "5000x5000 px", id="too-many-pixels"),
    pytest.param(b"II*\x00" + bytes(64), 422, "", id="broken-tiff"),
]


@pytest.mark.parametrize(("data", "status", "words"), BAD_FILES)
def test_bad_files_are_refused_naming_the_file(
    make_client: Any, data: bytes, status: int, words: str
) -> None:
    client = make_client()
    response = client.post("/v1/predict", files=[("files", ("bad.png", data, "image/png"))])
    assert response.status_code == status, response.text
    body = response.json()
    assert (
        body["file"] == "bad.png"
        and body["error"].startswith("bad.png ")
        and words in body["error"]
    )
    assert "Traceback" not in response.text


def test_truncated_jpeg_and_wrong_size(
    make_client: Any, valid_patches: list[Path], rng: np.random.Generator
) -> None:
    client = make_client()
    data = valid_patches[0].read_bytes()
    truncated = client.post(
        "/v1/predict", files=[("files", ("cut.jpg", data[: len(data) // 3], "image/jpeg"))]
    )
    assert truncated.status_code == 422 and truncated.json()["file"] == "cut.jpg"
    small = client.post(
        "/v1/predict",
        files=[("files", ("small.png", png_bytes(random_patch(rng, 50)), "image/png"))],
    )
    assert small.status_code == 422 and "50x50" in small.json()["error"]
    # one bad file among good ones: the whole request is refused, naming it
    mixed = client.post(
        "/v1/predict",
        files=[upload(valid_patches[1]), ("files", ("x.txt", b"hello", "text/plain"))],
    )
    assert mixed.status_code == 415 and mixed.json()["file"] == "x.txt"


def test_limits_on_requests(
    make_client: Any, valid_patches: list[Path], rng: np.random.Generator
) -> None:
    limits = ServeLimits(max_upload_mb=0.05, max_images=3, max_image_pixels=100 * 100)
    client = make_client(limits=limits)
    too_many = client.post("/v1/predict", files=[upload(p) for p in valid_patches[:4]])
    assert too_many.status_code == 413 and "at most 3" in too_many.json()["error"]
    # far more than the limit: the form parser stops early, with the same status and sentence
    far_too_many = client.post("/v1/predict", files=[upload(p) for p in valid_patches[:9]])
    assert far_too_many.status_code == 413 and "more than 3" in far_too_many.json()["error"]
    pixels = client.post(
        "/v1/predict",
        files=[("files", ("wide.png", png_bytes(random_patch(rng, 128)), "image/png"))],
    )
    assert pixels.status_code == 413 and pixels.json()["file"] == "wide.png"
    together = ServeLimits(max_request_pixels=2 * 96 * 96)
    three = [upload(p) for p in valid_patches[:3]]
    too_much = make_client(limits=together).post("/v1/predict", files=three)
    assert too_much.status_code == 413 and "together" in too_much.json()["error"]
    big_body = [
        ("files", (f"{i}.png", png_bytes(random_patch(rng)), "image/png")) for i in range(3)
    ]
    too_large = client.post("/v1/predict", files=big_body)  # ~83 KB of noise over 51 KB
    assert too_large.status_code == 413 and "MiB" in too_large.json()["error"]


def test_a_streamed_body_is_cut_off_at_the_limit(make_client: Any) -> None:
    client = make_client(limits=ServeLimits(max_upload_mb=0.01))

    def chunks() -> Any:
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        for _ in range(100):
            yield bytes(1024)

    response = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_malformed_requests_get_sentences(make_client: Any) -> None:
    client = make_client()
    missing = client.post("/v1/predict")
    assert missing.status_code == 422 and "'files'" in missing.json()["error"]
    not_multipart = client.post(
        "/v1/predict", content=b"{}", headers={"content-type": "application/json"}
    )
    assert not_multipart.status_code == 422 and "error" in not_multipart.json()
    garbled = client.post(
        "/v1/predict",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= garbled.status_code < 500 and "error" in garbled.json()
    assert client.get("/v1/nothing").status_code == 404
    wrong_method = client.get("/v1/predict")
    assert wrong_method.status_code == 405 and "not allowed" in wrong_method.json()["error"]


def test_random_bytes_never_give_a_500(make_client: Any) -> None:
    client = make_client()
    rng = np.random.default_rng(7)
    prefixes = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00"]
    for i in range(24):
        data = (
            prefixes[i % len(prefixes)]
            + rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        )
        response = client.post("/v1/predict", files=[("files", (f"r{i}.tif", data, "image/tiff"))])
        assert response.status_code in (413, 415, 422), (i, response.text)
        assert response.json()["file"] == f"r{i}.tif"


def test_a_full_queue_answers_503_with_retry_after(
    make_client: Any, valid_patches: list[Path]
) -> None:
    client = make_client()
    client.app.state.context.batcher.max_queue = 0  # as if the queue were full
    response = client.post("/v1/predict", files=[upload(valid_patches[0])])
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1" and "busy" in response.json()["error"]


@pytest.mark.slow  # the ONNX export alone takes tens of seconds on 2 cores
def test_an_onnx_model_serves_predictions_but_no_gradcam(
    make_client: Any, valid_patches: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from histodetect.export import export_onnx
    from histodetect.inference.predictor import Predictor
    from onnx_models import save_tiny_model

    model_pt = save_tiny_model(tmp_path / "model.pt", "histonet")
    onnx = export_onnx(model_pt, tmp_path / "model.onnx").path
    client = make_client(Predictor(onnx, device="cpu"))
    body = client.post("/v1/predict", files=[upload(p) for p in valid_patches[:4]]).json()
    assert body["model"]["file"] == "model.onnx"
    reference = Predictor(model_pt, device="cpu", precision="32-true")
    expected = reference.predict_pixels(
        np.stack([np.asarray(Image.open(p).convert("RGB")) for p in valid_patches[:4]])
    )
    served = [row["probability"] for row in body["predictions"]]
    assert served == pytest.approx(expected.tolist(), abs=2e-6)
    explained = client.post("/v1/explain", files=[upload(valid_patches[0], field="file")])
    assert explained.status_code == 501 and "ONNX Runtime" in explained.json()["error"]
    assert str(tmp_path) not in explained.json()["error"]
