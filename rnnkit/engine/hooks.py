"""Hooks a cell runs at each call, so once per step: which paths they keep a cell off.

``nn.Module.__call__`` runs a module's own forward, forward pre-, backward and backward
pre-hooks at every call. A cell stepped by the eager loop is called once per step, so its
hooks run once per step; the fused, compiled, scan and inductor paths never call the cell
per step, so a cell with such a hook (on itself or on a module inside it) runs on the loop,
and every path's own ``supports`` says so in the same words. Global hooks
(``register_module_forward_hook`` and its kin) choose no path (docs/layers.md, "Hooks").
"""

from __future__ import annotations

from torch import nn

__all__ = ["has_own_hooks", "has_step_hooks", "step_hook"]


#: The hooks ``nn.Module.__call__`` runs at each call of a module, as (attribute, what
#: explain calls one, what it calls several). Forward hooks registered ``with_kwargs`` or
#: ``always_call`` live in ``_forward_hooks`` too (flagged in side dicts), pre-hooks
#: registered ``with_kwargs`` in ``_forward_pre_hooks``.
_STEP_HOOKS = (
    ("_forward_pre_hooks", "a forward pre-hook", "forward pre-hooks"),
    ("_forward_hooks", "a forward hook", "forward hooks"),
    ("_backward_pre_hooks", "a backward pre-hook", "backward pre-hooks"),
    ("_backward_hooks", "a backward hook", "backward hooks"),
)


def has_own_hooks(attributes: dict) -> bool:
    """Whether the module whose ``__dict__`` is ``attributes`` has a hook of its own (not
    counting the modules inside it): the check every memo key and path choice shares."""
    return bool(attributes["_forward_hooks"] or attributes["_forward_pre_hooks"]
                or attributes["_backward_hooks"] or attributes["_backward_pre_hooks"])


def has_step_hooks(cell: nn.Module) -> bool:
    """Whether ``cell`` or a module inside it has a hook of its own that runs at each call
    (forward, forward pre-, backward or backward pre-hook): a cell called once per step
    runs it once per step, which only the eager loop does. Global hooks
    (``register_module_forward_hook``) are not counted (docs/layers.md, "Hooks")."""
    attributes = cell.__dict__
    if has_own_hooks(attributes):
        return True
    children = attributes["_modules"]
    return bool(children) and any(has_step_hooks(child) for child in children.values()
                                  if child is not None)


def step_hook(cell: nn.Module, owner: str | None = None) -> str | None:
    """What :func:`has_step_hooks` finds, in words, or None: ``"a forward hook on GRUCell:
    forward hooks run at each call, ..."``; ``owner`` names whose cell it is (``"layer 0's
    cell"``: ``"a forward hook on layer 0's cell (GRUCell): ..."``)."""
    if not has_step_hooks(cell):
        return None
    stack = [("", cell)]
    while stack:
        path, module = stack.pop()
        for attribute, one, several in _STEP_HOOKS:
            if module.__dict__[attribute]:
                where = type(cell).__name__ + (f".{path}" if path else "")
                where = f"{owner} ({where})" if owner else where
                return (f"{one} on {where}: {several} run at each call, and only the eager "
                        f"loop calls the cell at each step")
        stack.extend((f"{path}.{name}" if path else name, child)
                     for name, child in reversed(module._modules.items()) if child is not None)
    return None
