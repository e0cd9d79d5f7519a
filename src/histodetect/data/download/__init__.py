"""Downloading the public data sets: PCam from Zenodo (verified, resumable) and Kaggle's files."""

from histodetect.data.download.fetch import FetchOptions, FetchResult, fetch_file
from histodetect.data.download.kaggle import download_kaggle
from histodetect.data.download.pcam import PCAM_SPLITS, ZENODO_URL, download_pcam

__all__ = [
    "PCAM_SPLITS",
    "ZENODO_URL",
    "FetchOptions",
    "FetchResult",
    "download_kaggle",
    "download_pcam",
    "fetch_file",
]
