"""Federated learning's ClientApp: the project's one ClientApp (:func:`simulations.apps.build_client_app`).

Its ``train`` handler (:func:`simulations.apps.fl_train`) trains the whole model locally and replies
with the update; :func:`fl_split.fl.mods.compress_update` (a mod) compresses it on its way out.
"""

from __future__ import annotations

from simulations.apps import build_client_app, fl_train

#: Earlier names: the FL handler and the builder (``mods``: fault injection).
train = fl_train
make_fl_client_app = build_client_app

__all__ = ["app", "make_fl_client_app", "train"]

app = build_client_app()
