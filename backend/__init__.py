"""Easel's backend: the websocket server, the job queue and worker, and the diffusers engine.

The only package that imports torch and diffusers — lazily, so that importing ``backend`` (or
``backend.engine``, ``backend.params``) stays cheap until a model is needed.
"""
