"""Fleet evaluation: what a policy would have done to a fleet's recorded OOMs.

``oomkit evaluate`` replays every recorded OOM of many hosts' event logs
under each candidate policy and under the kernel alone, and compares with
what happened; ``oomkit export`` writes the logs as Parquet; ``generate``
makes realistic synthetic fleet logs (no real fleet data is at hand).

Nothing here is imported by the daemon.  The optional extra ``fleet``
(``pip install -e '.[fleet]'``) brings pyarrow (Parquet) and dask.distributed
(``--dask``); the rest runs on the standard library, msgspec and rich.
"""
