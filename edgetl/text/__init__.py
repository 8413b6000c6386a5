"""Text classification's workstation side: a plain-torch BERT encoder (``bert.py``) and its training
(``train.py``). Imported only where torch is installed; the device side is ``edgetl/tasks/text_classification.py``."""
