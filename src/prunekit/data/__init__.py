"""Calibration and evaluation text: embedded corpora, local files, hub sources, token windows."""

from prunekit.data.corpora import EMBEDDED_SOURCES, HUB_SOURCES, load_texts, wiki_split_titles
from prunekit.data.windows import Windows, build_windows, windows_from_texts

__all__ = ["EMBEDDED_SOURCES", "HUB_SOURCES", "Windows", "build_windows", "load_texts", "wiki_split_titles", "windows_from_texts"]
