"""Flows: client conversations and the lifetimes of their queries."""

from dotproxy.flows.flow import Admission, Flow, FlowStats

__all__ = ["Admission", "Flow", "FlowStats"]
