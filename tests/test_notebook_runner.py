"""``fedlib.notebook_runner``: a notebook that produced no figure (data missing) is skipped."""

import json

from fedlib import notebook_runner


def _executed(tmp_path, texts):
    """A minimal executed notebook whose code cells printed ``texts`` (one stream output each)."""
    cells = [{"cell_type": "code", "metadata": {}, "source": "", "execution_count": 1,
              "outputs": [{"output_type": "stream", "name": "stdout", "text": t}]} for t in texts]
    path = tmp_path / "nb.ipynb"
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_skip_marker_is_found(tmp_path):
    path = _executed(tmp_path, ["3 runs\n", "FIGURE SKIPPED: emnist-balanced is missing\nmore\n"])
    assert notebook_runner.skipped_reason(path) == "emnist-balanced is missing"


def test_no_marker_means_not_skipped(tmp_path):
    path = _executed(tmp_path, ["all fine\n", "the words FIGURE SKIPPED: mid-line do not count\n"])
    assert notebook_runner.skipped_reason(path) is None
