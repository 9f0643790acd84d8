"""A factory that returns the wrong type, for the model-loading error test."""


def make(settings: object) -> object:
    return object()
