"""The service, run by BentoML from this directory as top-level modules (`bentoml serve service:MLPService`).

It is also a package so that the pipeline can write model cards against the service's own schema
(`service.api_models`, which imports only pydantic): one definition of the card for both sides.
"""
