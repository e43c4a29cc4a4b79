"""`pulumi up` entry point of the example consumer."""

from consumer import build

build()
