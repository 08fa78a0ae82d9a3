"""What the in-browser viewer needs from a publication, without a second copy of the study.

The viewer's images are the archive's own entries: the ZIP the patient downloads holds each anonymised
instance as one entry, so an instance is served by reading that entry's byte range from storage (and
inflating it). Nothing is written beside the archive, so the publication is no slower, the bytes are counted
in its size, deleted with it, and replaced with it when a study is published again (a new object key).

:mod:`studypub.viewer.index` records, while the ZIP is written, where each entry lies and what a viewer must
know about the instance (a row per archive object, ``viewer_indexes``); :mod:`studypub.viewer.access` signs
short-lived instance URLs and reads an instance back from storage.
"""
