"""Attribution trees (Algorithm 1) and statistics over datasets."""

from .build import *  # noqa: F401,F403
