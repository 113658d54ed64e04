"""Helpers the test modules import (``from helpers.requires import need``)."""
