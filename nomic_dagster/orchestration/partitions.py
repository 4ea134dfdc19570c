"""Partitions: one `cycle_records` partition per cycle id, added when the cycle ends."""

import dagster as dg

cycles_partitions = dg.DynamicPartitionsDefinition(name="cycles")
