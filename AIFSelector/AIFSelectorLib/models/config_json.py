"""Network configurations (dataclasses) back from the JSON of a weights manifest or checkpoint."""
import dataclasses


def config_from_dict(cls, d: dict):
    """An instance of the dataclass ``cls`` from ``d`` (e.g. ``json.load`` of its ``asdict``): keys that are not
    fields are ignored (configurations written by other versions), and lists are turned back into tuples where
    the field's default is a tuple (JSON has no tuples), so that a round trip gives an equal configuration."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for name, value in d.items():
        if name not in fields:
            continue
        if isinstance(fields[name].default, tuple) and isinstance(value, list):
            value = tuple(value)
        kw[name] = value
    return cls(**kw)
