# C declarations for doh.py (compiled by Cython when built; the .py runs as it is otherwise).
