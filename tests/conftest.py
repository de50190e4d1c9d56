"""Shared test options: ``--update-golden`` rewrites golden files instead of comparing."""

import os


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the translator's golden output files from the current code",
    )


def pytest_configure(config):
    if config.getoption("--update-golden"):
        os.environ["DGW_UPDATE_GOLDEN"] = "1"
