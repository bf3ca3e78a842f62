"""Calibrated relevance: a map from a Reranker's score to P(relevant), fitted on labelled pairs.

>>> rr = Reranker("lightblue/lb-reranker-0.5B-v1.0", calibration="CALIB.json")
>>> rr.score_details(pairs).probability

``genrank calibrate`` fits one (``genrank.calibration.fit``) from labelled data
(``genrank.calibration.data``) and writes ``CALIB.json`` (``Calibration``) and its reliability
diagram (``genrank.calibration.plot``). Applying a calibration needs only numpy; fitting needs
scikit-learn, the picture matplotlib (``pip install 'genrank[calibrate]'``).
"""

from .calibrator import Calibration, CalibrationError, CalibrationWarning, fitted_for, load_calibration, score_settings

__all__ = ["Calibration", "CalibrationError", "CalibrationWarning", "fitted_for", "load_calibration",
           "score_settings"]
