"""The symbols the simulator lists when a market spec names none of its own.

Alpaca refuses a symbol it does not list (404 "asset not found", 422 "could not find
us_equity"), so the simulator does too: it trades the spec's symbols and positions and
these well-known US listings, and nothing made up unless the spec says `"universe": "any"`.
"""

from __future__ import annotations

__all__ = ["LISTED_TICKERS"]

LISTED_TICKERS = frozenset(
    """
    AAPL ABBV ABT ACN ADBE AIG AMD AMGN AMT AMZN AVGO AXP BA BAC BK BKNG BLK BMY BRK.B C
    CAT CHTR CL CMCSA COF COP COST CRM CSCO CVS CVX DE DHR DIS DOW DUK EMR F FDX GD GE
    GILD GM GOOG GOOGL GS HD HON IBM INTC INTU JNJ JPM KHC KO LIN LLY LMT LOW MA MCD MDLZ
    MDT MET META MMM MO MRK MS MSFT NEE NFLX NKE NVDA ORCL PEP PFE PG PM PYPL QCOM RTX
    SBUX SCHW SO SPG T TGT TMO TMUS TSLA TXN UBER UNH UNP UPS USB V VZ WFC WMT XOM
    SPY QQQ IWM DIA VTI VOO GLD TLT SHOP SNDL PLTR SOFI RIVN COIN
    """.split()  # noqa: SIM905 - as a list literal the 120 tickers would take 120 lines
)
