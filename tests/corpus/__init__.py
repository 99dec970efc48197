"""Tests of the corpus fetch script, its parsers and the benchmark corpus generators."""
