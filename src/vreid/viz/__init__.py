"""Pictures for reports: rank lists of queries and their top gallery matches."""

from vreid.viz.ranklist import RankListRow, draw_ranklist, draw_ranklists, ranklist_layout

__all__ = ["RankListRow", "draw_ranklist", "draw_ranklists", "ranklist_layout"]
