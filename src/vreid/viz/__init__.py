"""Pictures for reports: rank lists of queries and their top gallery matches, and the HTML evaluation report."""

from vreid.viz.ranklist import RankListRow, draw_ranklist, draw_ranklists, rank_row, rank_rows, ranklist_layout
from vreid.viz.report import write_report

__all__ = ["RankListRow", "draw_ranklist", "draw_ranklists", "rank_row", "rank_rows", "ranklist_layout",
           "write_report"]
