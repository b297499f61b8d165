"""Stage 1, preparation: bolus arrival, baseline, brain/vessel masks, denoising of tissue curves."""
