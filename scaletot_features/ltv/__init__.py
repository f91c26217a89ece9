"""LTV models and metrics (DESIGN.md 4.10).

``ltv.metrics`` (numpy/scipy: normalised Gini, gain curve, Spearman, AUC, decile MAPE, summarize)
and ``ltv.ziln`` (torch likelihood heads: ZILN for revenue, hurdle beta-binomial for the active-day
count). Import the submodules directly; this package imports neither, so reading metrics does not
load torch.
"""
