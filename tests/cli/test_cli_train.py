"""train/models/calibrate commands: listing, and bad input as one sentence with exit 2."""

from pathlib import Path

import pytest

from histodetect.cli.main import main


def test_models_lists_sizes_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "histonet_s" in out and "[default]" in out and "seed_cnn" in out and "3,370,561" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "STORE"], "give --data STORE and --out RUN_FOLDER"),
        (
            ["train", "--data", "STORE", "--out", "RUN", "--augment", "d4,sharpen"],
            "unknown augmentation sharpen",
        ),
        (["train", "--resume", "RUN"], "is not a training run"),
        (
            ["train", "--data", "STORE", "--out", "RUN", "--model", "resnet9000"],
            "Unknown model 'resnet9000'; choose one of",
        ),
        (["train", "--data", "STORE", "--out", "RUN", "--epochs", "0"], "at least 1"),
        (["calibrate", "RUN", "--data", "STORE"], "does not exist"),
    ],
)
def test_bad_training_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [
        a.replace("STORE", str(tmp_path / "store")).replace("RUN", str(tmp_path / "run"))
        for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_augment_option_switches_names_and_strengths() -> None:
    from histodetect.augment import AugmentConfig
    from histodetect.cli.train import _augment

    cfg = _augment("d4,hed,colour,blur,blur_sigma=1.0,hed_sigma=0.05")
    assert cfg == AugmentConfig(blur=True, blur_sigma=1.0, hed_sigma=0.05)
    assert _augment("none") == AugmentConfig.none()
    assert _augment("d4,hed,colour,mixup,mixup_alpha=0.2") == AugmentConfig(
        mixup=True, mixup_alpha=0.2
    )
    assert _augment("d4") == AugmentConfig(hed=False, colour=False, blur=False)
