"""Moved to :mod:`autotimm_deploy.images` (tasks and runtimes share it); kept so that existing imports work."""

from ..images import ImageLike, Letterbox, letterbox_images, load_image  # noqa: F401

__all__ = ["ImageLike", "Letterbox", "load_image", "letterbox_images"]
