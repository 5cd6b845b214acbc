"""Parity inputs: every batch size and H/W the artifact promises is checked, with no input that adds no shape."""

import pytest

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.exporters.pipeline import ExportOptions, parity_feeds
from autotimm_deploy.models.readers import load_model_file


@pytest.fixture(scope="module")
def loaded():
    return load_model_file(demo_model_path("detector"))


def _shapes(feeds):
    return [tuple(f[1]["images"].shape) for f in feeds]


@pytest.mark.parametrize("opts, expected", [
    # default profile 1:1:8: the demo batch (4) is the second batch size, no extra random input
    (dict(), [(1, 3, 64, 96), (1, 3, 64, 96), (4, 3, 64, 96)]),
    # no demo images: a random batch of 2 checks the dynamic batch
    (dict(demo_images=0), [(1, 3, 64, 96), (1, 3, 64, 96), (2, 3, 64, 96)]),
    # the demo batch equals OPT: the random batch of OPT + 1 is added
    (dict(batch=(1, 4, 8)), [(4, 3, 64, 96), (4, 3, 64, 96), (5, 3, 64, 96), (4, 3, 64, 96)]),
    # static batch: nothing else to check
    (dict(batch=(2, 2, 2), demo_images=2), [(2, 3, 64, 96), (2, 3, 64, 96), (2, 3, 64, 96)]),
    # dynamic H/W: a second H/W always
    (dict(dynamic_hw=True), [(1, 3, 64, 96), (1, 3, 64, 96), (2, 3, 96, 160), (4, 3, 64, 96)]),
])
def test_feeds_cover_every_promised_shape_once(loaded, opts, expected):
    feeds = parity_feeds(loaded, (64, 96), ExportOptions(**opts), 32)
    assert _shapes(feeds) == expected
    again = parity_feeds(loaded, (64, 96), ExportOptions(**opts), 32)
    assert all((a[1]["images"] == b[1]["images"]).all() for a, b in zip(feeds, again))  # seeded
