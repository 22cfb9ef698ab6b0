"""What ``Hub.add`` computes from raw data before its one write transaction: the checks, the
labels, the model's probe responses (ProbeLog), the sketch, the class record (accuracy), the
SimEx fleet and the coverage spaces. Nothing here writes: a failure leaves the hub unchanged."""
from __future__ import annotations

import numpy as np

from . import accuracy as _acc
from . import errors as E
from .embeddings import check_embedding
from .sketch import build_sketch
from .validate import _check_metadata, _check_name


def prepare(hub, name: str, data, *, metadata, partition_size, feature_names, progress, autoencoder, labels,
            image_shape, ae_config, embedding, model, logit_labels, probe_set, validation, confusion,
            class_accuracy) -> tuple:
    """The arguments of ``hub._add`` for ``hub.add(name, data, ...)``: ``(name, sketch, metadata,
    fleet, embedding, probed, spaces)`` (see :meth:`fitsketch.Hub.add` for the parameters)."""
    _check_name(name)
    metadata = _check_metadata(metadata)
    if name in hub:
        raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
    df, labels = _acc.with_labels(data, labels, feature_names)
    if labels is None and (validation is not None or confusion is not None or class_accuracy is not None):
        raise E.InvalidArgumentError("validation=, confusion= and class_accuracy= describe a model's per-class "
                                     "performance: pass the training labels= too")
    if embedding is not None:
        embedding = check_embedding(embedding, n_rows=len(df))
    probed = None
    if model is not None and (validation is None or probe_set is not None or hub.probe_sets()):
        probed = (hub.probe(model, probe_set), logit_labels, probe_set)
    elif model is None and logit_labels is not None:
        raise E.InvalidArgumentError("logit_labels describe a model's outputs: pass model= too")
    sketch = build_sketch(df, hub.config, partition_size=partition_size, device=hub.device, progress=progress)
    classes = None
    if labels is not None:
        classes = _acc.class_record(df, labels, sketch.names, sketch.kinds, hub.config)
        classes["perf"] = _acc.performance(classes, model=model, validation=validation, logit_labels=logit_labels,
                                           confusion=confusion, class_accuracy=class_accuracy,
                                           columns=sketch.names, feature_names=feature_names,
                                           kinds=sketch.kinds, config=hub.config, training=df)
    fleet = None
    if autoencoder:
        from . import simex

        cfg = ae_config or simex.AEConfig(seed=hub.config.seed)
        cols = [n for n, k in zip(sketch.names, sketch.kinds) if k == "numeric"]
        if not cols:
            raise E.UnsupportedDataError("autoencoder=True needs numeric columns and the data has none")
        X_ae = simex.numeric_matrix(df, columns=cols)
        ae_labels = None if labels is None else np.asarray(labels.tolist())
        trained = simex.train_fleet(X_ae, ae_labels, image_shape=image_shape, config=cfg, feature_names=cols)
        fleet = [r.to_record() for r in trained]
    # coverage spaces (engine/coverage_spaces.py): codes of the sample embeddings and of the
    # autoencoders' latents, stored in the entry's "extra" record in the same transaction
    spaces = {}
    if embedding is not None or fleet is not None:
        from . import coverage_spaces as _spaces

        ckw = dict(seed=hub.config.seed, bits=hub.config.coverage_bits, tables=hub.config.coverage_tables,
                   device=hub.device)
        if embedding is not None:
            spaces["coverage_embedding"] = _spaces.embedding_record(embedding, **ckw)
        if fleet is not None:
            spaces["coverage_latent"] = _spaces.latent_record(X_ae, ae_labels, trained, **ckw)
    if classes is not None:
        spaces["classes"] = classes
    return name, sketch, metadata, fleet, embedding, probed, spaces


def batch_bytes(sketches, config) -> int:
    """About what a batch of ``sketches`` adds to the hub's file, for ``HubStore.transact(reserve=)``
    (the map grown before the batch's transaction, not after it filled the map): each sketch's
    arrays as they are (its stored records, compressed, are about half of that: bench/bench_bulk.py)
    plus 16 bytes for each of its band postings (``config.lsh_l`` a feature) and 4 KiB of records."""
    def nbytes(d):
        return sum(v.nbytes for v in d.values() if isinstance(v, np.ndarray)) if isinstance(d, dict) else 0

    return sum(sk.signatures.nbytes + nbytes(sk.hist) + nbytes(sk.coverage) + 16 * config.lsh_l * sk.n_features
               + 4096 for sk in sketches)
