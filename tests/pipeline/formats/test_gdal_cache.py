"""GDAL's block cache is bounded per process: 64 MB for a job, 16 MB on a Dask worker, the user's
GDAL_CACHEMAX whenever it is set."""

from __future__ import annotations

import pytest
from rasterio.env import get_gdal_config

from pipeline.formats import gdal_cache
from pipeline.formats.gdal_cache import bound_gdal_cache, use_worker_cache


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    monkeypatch.setattr(gdal_cache, "_process_limit", None)
    yield
    gdal_cache._process_limit = None
    bound_gdal_cache()


def test_job_and_worker_limits():
    bound_gdal_cache()
    assert int(get_gdal_config("GDAL_CACHEMAX")) == 64 * 2**20
    use_worker_cache()
    assert int(get_gdal_config("GDAL_CACHEMAX")) == 16 * 2**20
    bound_gdal_cache()  # a scene opened later on the worker keeps the worker's limit
    assert int(get_gdal_config("GDAL_CACHEMAX")) == 16 * 2**20


def test_the_users_setting_wins(monkeypatch):
    bound_gdal_cache()
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    use_worker_cache()
    bound_gdal_cache()
    assert int(get_gdal_config("GDAL_CACHEMAX")) == 64 * 2**20  # left as it was: GDAL reads the variable
