"""Studies: named cohorts and analyses, validated, run over one or several node stores."""
