"""Reading a Prometheus `/metrics` page the way a scraper does."""

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of the page, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value; 0 when the page does not have it (yet)."""
    return metric_samples(text).get((name, frozenset(labels.items())), 0.0)
