"""A network from a MONAI bundle's ``network_def``, instantiated by MONAI's own ``ConfigParser``.

A config's ``_target_`` can name any importable callable, and ``$`` strings are Python, so building a
net from a config someone sent you is running their code. By default the definition must be plain
data (no ``$`` anywhere) whose ``_target_`` is a class of ``monai.networks.nets``: then nothing but
that class's constructor runs. ``trust_code=True`` lifts both limits, for bundles the user trusts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from pipeline.errors import BundleError

NETS_MODULE = "monai.networks.nets"


def find_code(value: Any, where: str = "") -> str | None:
    """The id of the first ``$`` expression (or ``_requires_`` hook) in a config subtree, else None."""
    if isinstance(value, str):
        return where if value.startswith("$") else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            here = f"{where}#{k}" if where else str(k)
            if k == "_requires_":
                return here
            found = find_code(v, here)
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_code(v, f"{where}#{i}")
            if found:
                return found
    return None


def net_class_name(target: Any) -> str:
    """``UNet`` / ``monai.networks.nets.UNet`` -> ``UNet``; anything else refused (it would import code)."""
    if not isinstance(target, str):
        raise BundleError(f"network_def#_target_ must be a class name, got {target!r}")
    module, _, name = target.rpartition(".")
    if module not in ("", NETS_MODULE, "monai.networks.nets." + name.lower()) and not module.startswith(
        NETS_MODULE + "."
    ):
        raise BundleError(
            f"network_def#_target_ {target!r} is not a class of {NETS_MODULE}; "
            "building it would run code from the config (pass --trust-code if you trust this bundle)"
        )
    import monai.networks.nets as nets

    obj = getattr(nets, name, None) if name and not name.startswith("_") else None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise BundleError(f"unknown network {target!r}: {NETS_MODULE} has no network class {name!r}")
    return name


def stored_as_data(network_def: Any) -> bool:
    """Whether ``network_def`` rebuilds without trusting code: plain data, no ``$``, and a target in
    ``monai.networks.nets``. A trusted bundle's net that is not (a class in its own ``scripts/``, an
    expression) can only be rebuilt from the bundle itself, with the user's trust."""
    if not isinstance(network_def, Mapping) or not _plain(network_def) or find_code(network_def):
        return False
    try:
        net_class_name(network_def.get("_target_"))
    except BundleError:
        return False
    return True


def _plain(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def build_network_def(network_def: Mapping[str, Any], *, trust_code: bool = False) -> nn.Module:
    """Instantiate ``network_def`` (reference-free plain data) with ``ConfigParser``."""
    from monai.bundle import ConfigParser

    definition = dict(network_def)
    if not trust_code:
        code = find_code(definition, "network_def")
        if code:
            raise BundleError(f"{code} is a $ expression (Python code); pass --trust-code to evaluate it")
        definition["_target_"] = f"{NETS_MODULE}.{net_class_name(definition.get('_target_'))}"
    parser = ConfigParser({"network_def": definition})
    try:
        net = parser.get_parsed_content("network_def", instantiate=True, eval_expr=trust_code)
    except Exception as exc:  # MONAI wraps constructor errors in RuntimeError with the whole config
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"cannot build network_def: {reason}") from exc
    if not isinstance(net, nn.Module):
        raise BundleError(f"network_def built a {type(net).__name__}, not a torch module")
    return net
