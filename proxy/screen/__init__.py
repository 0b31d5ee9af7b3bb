"""Screening what flows through: result scanning, session taint, the optional classifier."""
