"""What every op shares; nothing here knows a particular op's math but the estimators."""
