"""Emotion signals from text: GoEmotions' 28 labels (plus Ekman and sentiment groups), models and baselines."""
