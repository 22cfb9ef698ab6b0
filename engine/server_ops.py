"""The server's operations: one function per protocol op, and :data:`HANDLERS`, the allow-list a
request's op is looked up in (engine/server.py). Every handler gets ``(server, hub, args)`` with
``args`` already checked against the op's schema (``protocol.check_args``); data named by a path
is read only inside the server's ``allow_paths``."""
from __future__ import annotations

from . import errors as E
from .protocol import OPS, resolve_path, sketch_from_wire

__all__ = ["HANDLERS"]


# ------------------------------------------------------------------------------- operations
def _data(server, args: dict):
    data = args["data"]
    if isinstance(data, str):
        data = resolve_path(data, server.allow_paths)
    return data


def _query(server, args: dict) -> dict:
    if ("data" in args) == ("sketch" in args):
        raise E.InvalidArgumentError("search: give exactly one of 'data' or 'sketch'")
    q = sketch_from_wire(args["sketch"]) if "sketch" in args else _data(server, args)
    kw_names = ("k", "method", "where", "feature_names", "embedding", "embedding_candidates")
    kw = {k: args[k] for k in kw_names if k in args}
    params = args.get("params", {})
    if not all(isinstance(k, str) and k not in ("data", *kw_names) for k in params):
        raise E.InvalidArgumentError(f"search: params must map per-query parameter names (str, none of "
                                     f"{['data', *kw_names]}) to values, got keys {sorted(map(str, params))}")
    return {"data": q, **kw, **params}


def _op_ping(server, hub, args):
    return {"pong": True}


def _op_warm(server, hub, args):
    return hub.warm()     # waits for the start-up warm if it still runs (the profile index's lock)


def _op_stats(server, hub, args):
    return hub.stats()


def _op_add(server, hub, args):
    kw = {k: args[k] for k in ("metadata", "partition_size", "feature_names", "embedding") if k in args}
    return hub.add(args["name"], _data(server, args), **kw).to_dict()


def _wire_sketch(hub, rec):
    sk = sketch_from_wire(rec)
    if sk.signatures.shape[1] != hub.config.num_perm:
        raise E.InvalidArgumentError(f"sketch record is malformed: signatures have {sk.signatures.shape[1]} "
                                     f"columns, this hub's num_perm is {hub.config.num_perm}")
    return sk


def _op_add_sketch(server, hub, args):
    return hub.add_sketch(args["name"], _wire_sketch(hub, args["sketch"]), metadata=args.get("metadata")).to_dict()


def _op_add_sketches(server, hub, args):
    items = []
    for i, it in enumerate(args["items"]):
        if (not isinstance(it, dict) or set(it) - {"name", "sketch", "metadata"} or not isinstance(it.get("name"), str)
                or not isinstance(it.get("sketch"), dict) or not isinstance(it.get("metadata"), (dict, type(None)))):
            raise E.InvalidArgumentError(f"add_sketches: item {i} is not a map {{name: str, sketch: map, metadata?: "
                                         "map | null}}")
        try:
            sk = _wire_sketch(hub, it["sketch"])
        except E.InvalidArgumentError as e:
            raise E.InvalidArgumentError(f"add_sketches: item {i} ({it['name']!r}): {e}") from None
        items.append((it["name"], sk, it.get("metadata")))
    return hub.add_sketches(items, batch=args.get("batch", 1000))


def _op_search(server, hub, args):
    q = _query(server, args)
    return [m.to_dict() for m in hub.search(q.pop("data"), **q)]


def _op_explain(server, hub, args):
    q = _query(server, args)
    return hub.explain(q.pop("data"), **q).to_dict()


def _op_class_pool(server, hub, args):
    q = _query(server, args)
    q.pop("k", None)
    q.pop("method", None)
    return hub.class_pool(q.pop("data"), **q)


def _op_get(server, hub, args):
    return hub.get(args["name"]).to_dict()


def _op_remove(server, hub, args):
    hub.remove(args["name"])
    return None


def _op_names(server, hub, args):
    return hub.names()


def _op_len(server, hub, args):
    return len(hub)


def _op_contains(server, hub, args):
    return args["name"] in hub


def _op_nearest(server, hub, args):
    kw = {k: args[k] for k in ("k", "index", "level") if k in args}
    out = hub.nearest(args["xq"], **kw)
    if kw.get("level", "sample") == "entry":
        if out and isinstance(out[0], list):
            return {"matches": [[m.to_dict() for m in ms] for ms in out]}
        return {"matches": [m.to_dict() for m in out], "single": True}
    D, I = out
    return {"D": D, "I": I}


def _op_sample(server, hub, args):
    return list(hub.sample(args["sample_id"]))


def _op_search_logits(server, hub, args):
    if "descriptor" in args:
        query = args["descriptor"]
    elif "entry" in args and "logit" in args:
        query = (args["entry"], args["logit"])
    else:
        raise E.InvalidArgumentError("search_logits needs entry + logit, or a descriptor")
    return [dict(m.__dict__) for m in hub.search_logits(query, k=args.get("k", 10))]


# The allow-list: an op not in here does not exist. Never getattr(hub, op).
HANDLERS = {
    "ping": _op_ping,
    "stats": _op_stats,
    "add": _op_add,
    "add_sketch": _op_add_sketch,
    "add_sketches": _op_add_sketches,
    "search": _op_search,
    "explain": _op_explain,
    "get": _op_get,
    "remove": _op_remove,
    "names": _op_names,
    "len": _op_len,
    "contains": _op_contains,
    "nearest": _op_nearest,
    "sample": _op_sample,
    "search_logits": _op_search_logits,
    "warm": _op_warm,
    "class_pool": _op_class_pool,
}
if tuple(HANDLERS) != OPS:  # pragma: no cover - keep protocol.OPS and this allow-list in step
    raise ImportError(f"server HANDLERS {tuple(HANDLERS)} differ from protocol.OPS {OPS}")
