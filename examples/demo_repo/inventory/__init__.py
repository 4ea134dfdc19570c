"""A tiny inventory domain used as the nomic_dagster demo target."""
