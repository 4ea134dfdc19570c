"""Text helpers for labels."""


def slugify(name: str) -> str:
    """Lower-case, words joined by single dashes."""
    words = "".join(c if c.isalnum() else " " for c in name.lower()).split()
    return "-".join(words)


def label(sku: str, name: str) -> str:
    return f"{sku.upper()} {slugify(name)}"


def _unused_banner(text):
    return "*" * len(text)
