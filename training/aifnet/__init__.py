"""Offline training and evaluation of AIFNet (de la Rosa et al., MedIA 2021).

    python -m training.aifnet.train --kind aif --out runs/aif          # one model
    python -m training.aifnet.crossval --kind aif --folds 5            # 5-fold cross-validation
    python -m training.aifnet.evaluate                                 # held-out phantom tables
    python -m training.aifnet.reproduce                                # the shipped weights, end to end

Data: the digital phantom (randomised anatomy, AIF shape, bolus arrival, dispersion, noise and dose;
seeds 1000+ train, 5000+ validation, 9000+ held-out evaluation) and ISLES 2018 cases with one annotated
voxel per function (see ``annotations.py`` for the CSV format).
"""
