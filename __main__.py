"""Pulumi entry point: `pulumi up` runs this. All logic lives in components/."""

from components.program import run, tune_gc

tune_gc()
run()
