"""Rebuildable modules: ``get_config()`` / ``from_config()`` for every rnnkit cell and layer.

As in Keras, a module's config is a JSON-serialisable ``dict`` of its constructor arguments,
and ``type(module).from_config(config)`` builds an equivalent module (same config, same
parameter names and shapes; load the original's ``state_dict`` to get the same outputs)::

    config = layer.get_config()                 # {"cell": {...}, "go_backwards": False, ...}
    twin = type(layer).from_config(config)
    twin.load_state_dict(layer.state_dict())

    blob = serialize(layer)                     # {"class_name": "Recurrence", "config": {...}}
    twin = deserialize(json.loads(json.dumps(blob)))

Nothing is written by hand per class: :class:`Configurable` records the arguments each
constructor was called with (bound to its signature, defaults filled in), and
:meth:`Configurable.get_config` writes them out. Argument values become JSON as follows:

* ``bool``, ``int``, ``float``, ``str``, ``None`` as they are (NumPy scalars as ``int`` or
  ``float``); tuples and lists as lists; dicts with string keys as dicts;
* a module (a cell inside ``Recurrence``, the layer inside ``Bidirectional``, a list of cells)
  as ``{"class_name": ..., "config": ...}``, recursively (Keras' ``serialize_keras_object``);
  the class is found again through a registry, never by importing a name from the config;
* a tensor (e.g. ``Recurrence(initial_state=...)``) as ``{"class_name": "torch.Tensor",
  "config": {"data": [...], "dtype": "float32"}}``;
* the ``dtype`` argument as a string (``"float64"``): the dtype of the module's parameters
  when it has any (so a module moved by ``.double()`` rebuilds in float64), else the one
  passed; ``device`` is never written: a rebuilt module is on the default device, move it
  with ``.to(device)``;
* anything else (a lambda, an open file) cannot be rebuilt: ``get_config`` raises a
  ``TypeError`` naming the class and the argument.

The config holds the constructor arguments, not attributes changed after construction
(``layer.go_backwards = True``); ``dtype`` is the one exception.

Registry: every public class of rnnkit that derives from :class:`Configurable`
(``RecurrentCell``, the drivers, the drop-ins, the cell wrappers) is registered under its class
name when it is defined, and a few ``torch.nn`` modules that rnnkit takes as arguments (e.g.
the ``head`` of ``UnfoldFrom``) under ``"torch.nn.<Name>"``. A user's own class opts in with
:func:`register_serializable`::

    @rnnkit.register_serializable
    class MyCell(rnnkit.cells.RecurrentCell):
        def __init__(self, input_size: int, hidden_size: int) -> None: ...
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "Configurable",
    "deserialize",
    "register_serializable",
    "registered_classes",
    "serialize",
]

_T = TypeVar("_T", bound=type)

# class_name -> the class (anything with get_config / from_config)
_REGISTRY: dict[str, type] = {}
# torch.nn classes rnnkit accepts as arguments: class -> (class_name, to_config, from_config)
_TORCH_ADAPTERS: dict[type, tuple[str, Callable[[Any], dict], Callable[[dict], Any]]] = {}
_INIT_ARGUMENTS = "_rnnkit_init_arguments"
_DTYPES: dict[str, torch.dtype] = {
    str(value).removeprefix("torch."): value
    for value in vars(torch).values()
    if isinstance(value, torch.dtype)
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` -> ``"float64"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: object, owner: str = "config") -> torch.dtype:
    """``"float64"`` (or ``"torch.float64"``) -> ``torch.float64``; a clear error otherwise."""
    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name.removeprefix("torch.") in _DTYPES:
        return _DTYPES[name.removeprefix("torch.")]
    raise ValueError(f"{owner}: unknown dtype {name!r} (expected a name such as 'float32')")


def register_serializable(cls: _T | None = None, *, name: str | None = None) -> Any:
    """Register a class so that :func:`deserialize` can rebuild it from its ``class_name``.

    Use as ``@register_serializable`` or ``@register_serializable(name="mylib.MyCell")``. The
    class either derives from :class:`Configurable` (every rnnkit cell and layer does, so a
    subclass of ``RecurrentCell`` needs nothing else) or defines ``get_config()`` and a
    classmethod ``from_config(config)`` itself. The name defaults to the class name; two
    different classes cannot share a name.
    """

    def register(target: _T) -> _T:
        if not isinstance(target, type):
            raise TypeError(f"register_serializable: expected a class, got {target!r}")
        if not (callable(getattr(target, "get_config", None))
                and callable(getattr(target, "from_config", None))):
            raise TypeError(
                f"register_serializable: {target.__name__} needs get_config() and a classmethod "
                "from_config(config); derive it from rnnkit.config.Configurable (rnnkit's cells "
                "and layers do) or write both"
            )
        key = name if name is not None else target.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"register_serializable: name must be a non-empty str, got {key!r}")
        known = _REGISTRY.get(key)
        if known is not None and known is not target and _qualified(known) != _qualified(target):
            raise ValueError(
                f"register_serializable: the name {key!r} is already taken by "
                f"{_qualified(known)}; pass another name=..."
            )
        _REGISTRY[key] = target
        target._rnnkit_class_name = key  # type: ignore[attr-defined]
        return target

    return register if cls is None else register(cls)


def registered_classes() -> dict[str, type]:
    """A copy of the registry: ``class_name -> class``."""
    return dict(_REGISTRY)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _init_owner(cls: type) -> type:
    """The class whose ``__init__`` an instance of ``cls`` runs first."""
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            return klass
    return object


class Configurable:
    """Mixin: records the constructor's arguments and gives ``get_config``/``from_config``.

    Every subclass that defines ``__init__`` gets it wrapped: the call's arguments are bound
    to the signature (defaults filled in) and kept on the instance, but only for the most
    derived ``__init__`` (a subclass's ``super().__init__(...)`` call records nothing). Public
    subclasses defined inside the ``rnnkit`` package are registered under their class name; a
    user's subclass registers with :func:`register_serializable`.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = _recording_init(cls, vars(cls)["__init__"])  # type: ignore[misc]
        module = cls.__module__
        if (module == "rnnkit" or module.startswith("rnnkit.")) and not cls.__name__.startswith(
            "_"
        ):
            register_serializable(cls)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict (see :mod:`rnnkit.config`)."""
        owner = type(self).__name__
        arguments = self.__dict__.get(_INIT_ARGUMENTS)
        if arguments is None:
            raise TypeError(f"{owner}.get_config: the constructor's arguments were not recorded")
        config: dict[str, Any] = {}
        for key, value in arguments.items():
            if key == "device":
                continue
            if key == "dtype":
                config[key] = self._config_dtype(value)
                continue
            config[key] = to_json(value, f"{owner}.get_config: argument {key}")
        return config

    def _config_dtype(self, passed: Any) -> str | None:
        parameters = self.parameters() if isinstance(self, nn.Module) else iter(())
        first = next(parameters, None)
        if first is not None:
            return dtype_name(first.dtype)
        return None if passed is None else dtype_name(dtype_from_name(passed))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Build a module from the dict :meth:`get_config` returned (JSON round trips are
        fine). Unknown or missing keys raise a ``ValueError`` naming them."""
        owner = f"{cls.__name__}.from_config"
        if not isinstance(config, dict):
            raise TypeError(f"{owner}: config must be a dict, got {type(config).__name__}")
        if set(config) == {"class_name", "config"}:
            raise ValueError(
                f"{owner}: got a serialized object ({{'class_name', 'config'}}); pass its "
                "'config' part, or call rnnkit.config.deserialize on the whole"
            )
        signature = inspect.signature(_init_owner(cls).__init__)
        parameters = list(signature.parameters.values())[1:]  # without self
        accepted = _accepted_keys(cls)
        unknown = [key for key in config if accepted is not None and key not in accepted]
        if unknown:
            raise ValueError(
                f"{owner}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)}; {cls.__name__} takes "
                f"{', '.join(sorted(accepted or ()))}"
            )
        missing = [
            p.name for p in parameters
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in config
        ]
        if missing:
            raise ValueError(
                f"{owner}: missing required key{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(k) for k in missing)}"
            )
        values = {key: from_json(value, f"{owner}: key {key!r}") for key, value in config.items()}
        if isinstance(values.get("dtype"), str):
            values["dtype"] = dtype_from_name(values["dtype"], f"{owner}: key 'dtype'")
        args: list[Any] = []
        for p in parameters:
            if p.kind is p.POSITIONAL_ONLY and p.name in values:
                args.append(values.pop(p.name))
            elif p.kind is p.VAR_POSITIONAL:
                args.extend(values.pop(p.name, ()))
        return cls(*args, **values)


def _accepted_keys(cls: type) -> set[str] | None:
    """Keyword names the constructor takes; through ``**kwargs`` into the base classes'
    ``__init__`` (``rnnkit.LSTM(**options)`` -> ``RNNBase``). ``None``: anything goes."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object or klass is nn.Module:
            return keys if keys else None
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        keys.update(p.name for p in parameters if p.kind is not p.VAR_KEYWORD)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return keys
    return None


def _recording_init(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _init_owner(type(self)) is cls:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments: dict[str, Any] = {}
            for index, (key, value) in enumerate(bound.arguments.items()):
                if index == 0:
                    continue  # self
                kind = signature.parameters[key].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    arguments[key] = list(value)
                else:
                    arguments[key] = value
            self.__dict__[_INIT_ARGUMENTS] = arguments
        init(self, *args, **kwargs)

    return __init__


# ------------------------------------------------------------------ values <-> JSON
def _class_name(obj: Any) -> str | None:
    """The registry name of ``obj``'s class, or ``None`` when it is not registered."""
    cls = type(obj)
    key = vars(cls).get("_rnnkit_class_name")
    if key is not None and _REGISTRY.get(key) is cls:
        return key
    adapter = _TORCH_ADAPTERS.get(cls)
    return adapter[0] if adapter is not None else None


def serialize(obj: Any) -> dict[str, Any]:
    """``{"class_name": ..., "config": ...}`` for a registered module (or a tensor)."""
    return to_json(obj, "serialize") if isinstance(obj, (nn.Module, Tensor)) else _not_module(obj)


def _not_module(obj: Any) -> dict[str, Any]:
    raise TypeError(f"serialize: expected an nn.Module, got {type(obj).__name__}")


def to_json(value: Any, where: str) -> Any:
    """``value`` as JSON-serialisable data; ``where`` names it in errors."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.dtype):
        return {"class_name": "torch.dtype", "config": dtype_name(value)}
    if isinstance(value, Tensor):
        return {
            "class_name": "torch.Tensor",
            "config": {"data": value.detach().cpu().tolist(), "dtype": dtype_name(value.dtype)},
        }
    if isinstance(value, (list, tuple)):
        return [to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{where}: only dicts with str keys can be saved, got {value!r}")
        return {key: to_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, nn.Module):
        key = _class_name(value)
        if key is None and type(value).__module__.startswith("torch."):
            known = ", ".join(sorted(name for name, _, _ in _TORCH_ADAPTERS.values()))
            raise TypeError(
                f"{where} is a torch.nn.{type(value).__name__}; the torch.nn modules a config "
                f"can hold are {known}"
            )
        if key is None:
            raise TypeError(
                f"{where} is a {type(value).__name__}, which is not registered: decorate the "
                "class with rnnkit.register_serializable (it needs get_config/from_config; "
                "subclasses of rnnkit.cells.RecurrentCell have both)"
            )
        if key in _REGISTRY:
            return {"class_name": key, "config": value.get_config()}
        return {"class_name": key, "config": _TORCH_ADAPTERS[type(value)][1](value)}
    raise TypeError(
        f"{where} is a {type(value).__name__} ({value!r}), which cannot be written to a config; "
        "only numbers, strings, lists, dicts, tensors and registered modules can"
    )


def deserialize(data: Any) -> Any:
    """Rebuild what :func:`serialize` wrote: ``{"class_name": ..., "config": ...}``."""
    if not _is_serialized(data):
        raise ValueError(
            "deserialize: expected a dict with exactly the keys 'class_name' and 'config', got "
            + (f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__)
        )
    return from_json(data, "deserialize")


def _is_serialized(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"class_name", "config"}


def from_json(value: Any, where: str) -> Any:
    """The inverse of :func:`to_json`: nested ``class_name``/``config`` dicts become modules."""
    if isinstance(value, list):
        return [from_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if not _is_serialized(value):
        return {key: from_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    key, config = value["class_name"], value["config"]
    if key == "torch.dtype":
        return dtype_from_name(config, where)
    if key == "torch.Tensor":
        if not isinstance(config, dict) or set(config) != {"data", "dtype"}:
            raise ValueError(f"{where}: a torch.Tensor config needs exactly 'data' and 'dtype'")
        return torch.tensor(config["data"], dtype=dtype_from_name(config["dtype"], where))
    if not isinstance(key, str):
        raise ValueError(f"{where}: class_name must be a str, got {key!r}")
    cls = _REGISTRY.get(key)
    if cls is not None:
        return cls.from_config(config)
    for name, _, build in _TORCH_ADAPTERS.values():
        if name == key:
            if not isinstance(config, dict):
                raise ValueError(f"{where}: the config of {key} must be a dict")
            return build(config)
    raise ValueError(
        f"{where}: unknown class_name {key!r}; it is neither an rnnkit class nor registered "
        "with rnnkit.register_serializable (register it before loading)"
    )


# ------------------------------------------------------------------ torch.nn arguments
def _torch_adapter(cls: type, to_config: Callable[[Any], dict], build: Callable[..., Any]):
    name = f"torch.nn.{cls.__name__}"

    def from_config(config: dict) -> Any:
        config = {key: from_json(item, f"{name}: key {key!r}") for key, item in config.items()}
        if isinstance(config.get("dtype"), str):
            config["dtype"] = dtype_from_name(config["dtype"], name)
        try:
            return build(**config)
        except TypeError as error:
            raise ValueError(f"{name}.from_config: {error}") from None

    _TORCH_ADAPTERS[cls] = (name, to_config, from_config)


for _cls in (nn.Identity, nn.Tanh, nn.Sigmoid, nn.ReLU):
    _torch_adapter(_cls, lambda module: {}, _cls)
_torch_adapter(
    nn.Linear,
    lambda m: {"in_features": m.in_features, "out_features": m.out_features,
               "bias": m.bias is not None, "dtype": dtype_name(m.weight.dtype)},
    nn.Linear,
)
_torch_adapter(nn.Dropout, lambda m: {"p": float(m.p)}, nn.Dropout)
_torch_adapter(
    nn.Sequential,
    lambda m: {"layers": [to_json(layer, f"Sequential[{i}]") for i, layer in enumerate(m)]},
    lambda layers: nn.Sequential(*layers),
)
del _cls
