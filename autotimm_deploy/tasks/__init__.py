"""Tasks: what each kind of model outputs and how every stage treats it (:class:`~.base.Task`), by name.

>>> get_task("detection").decode_modes, get_task("classification").metric_keys
(('raw', 'activations', 'boxes'), ('top1',))
>>> sorted(task_names())
['classification', 'detection', 'instance_segmentation', 'segmentation']
>>> get_task("pose")
Traceback (most recent call last):
...
autotimm_deploy.errors.AutotimmError: unknown task 'pose'; autotimm-deploy knows classification, detection, instance_segmentation, segmentation

A task module registers its class with :func:`register_task`; the built-in ones are imported on first use (a runtime
that only classifies never imports the detection task's graph passes).  Adding a task: a module here, its line in
``_BUILTIN``, its C++ post-processing in ``cpp/src/``, its tests (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, List, Type

from ..errors import AutotimmError
from .base import Agreement, GraphInfo, Task, TritonTensor

if TYPE_CHECKING:  # pragma: no cover
    from ..models.family import Family

__all__ = ["Task", "GraphInfo", "Agreement", "TritonTensor", "register_task", "get_task", "task_of", "task_names"]

#: Built-in tasks: name -> "module:class" (relative to this package), imported on first use.
_BUILTIN = {
    "detection": ".detection:DetectionTask",
    "classification": ".classification:ClassificationTask",
    "segmentation": ".segmentation:SegmentationTask",
    "instance_segmentation": ".instance:InstanceSegmentationTask",
}
_TASKS: Dict[str, Task] = {}
_CHECKED: Dict[int, "Family"] = {}


def register_task(cls: Type[Task]) -> Type[Task]:
    """Register a :class:`Task` subclass under its ``name`` (a class decorator); a second task of the same name
    is an error, not a silent replacement."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _TASKS and type(_TASKS[cls.name]) is not cls:
        raise ValueError(f"task {cls.name!r} is already registered ({type(_TASKS[cls.name]).__name__})")
    _TASKS[cls.name] = cls()
    return cls


def task_names() -> List[str]:
    return sorted(set(_BUILTIN) | set(_TASKS))


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name is an :class:`AutotimmError` listing the known ones."""
    if name not in _TASKS:
        if name not in _BUILTIN:
            raise AutotimmError(f"unknown task {name!r}; autotimm-deploy knows {', '.join(task_names())}")
        module, cls = _BUILTIN[name].split(":")
        register_task(getattr(importlib.import_module(module, __name__), cls))
    return _TASKS[name]


def task_of(family: "Family") -> Task:
    """The task of a model family, after checking that the family declares the outputs the task needs."""
    task = get_task(family.task)
    if _CHECKED.get(id(family)) is not family:
        task.check_family(family)
        _CHECKED[id(family)] = family
    return task
