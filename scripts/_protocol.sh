# The degradation protocol's experiments/edit.py flags (issue 13), sourced by
# scripts/degradation_smollm2.sh and scripts/regularizers_smollm2.sh so that their runs compare:
# 1,000 CounterFact edits (records 0..NUM-1) in batches of 100; every 200 edits held-out NLL and
# drift on 200 WikiText-2 paragraphs, the six downstream tasks by likelihood on <= DOWNSTREAM_TESTS
# items each, retention of 20 records of every earlier batch; final metrics on every record, GE on
# a seeded 20 %. Needs NUM and DATA set; TASKS and DOWNSTREAM_TESTS override.
common=(--data_path="$DATA/counterfact/counterfact-edit.json" --num_edits="$NUM" --batch_size=100
        --downstream=${TASKS:-sst2,mrpc,cola,rte,nli,mmlu} --downstream_every=2
        --downstream_protocol=likelihood --downstream_tests=${DOWNSTREAM_TESTS:-300}
        --heldout_text="$DATA/text/wikitext-2.valid.tokens.txt" --heldout_docs=200 --drift
        --retention_every=2 --retention_sample=20
        --final_fraction=1.0 --generation_fraction=0.2 --activation_texts=32)
