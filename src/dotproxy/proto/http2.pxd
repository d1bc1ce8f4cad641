# C declarations for http2.py (compiled by Cython when built; the .py runs as it is otherwise).
