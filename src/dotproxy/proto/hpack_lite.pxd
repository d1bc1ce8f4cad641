# C declarations for hpack_lite.py (compiled by Cython when built; the .py runs as it is otherwise).
