"""From scores to figures, independent of which benchmark produced them.

Data flow: stats (accuracies, bootstrap intervals, paired tests) -> report (outputs written
atomically, tables, plots) -> compare (paired comparison of finished runs).
"""
