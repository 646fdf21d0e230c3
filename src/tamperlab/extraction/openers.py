"""Candidate opening words S, ranked by descending frequency.

The extraction paper traverses "a list of opening words from a public dataset, by descending frequency" (§4.4).
This is that list, in that order: the 300 words of `train/data/stage2_{dolly,finance}/eval/pipeline_300.json`
in thu-coai/Backdoor-Data-Extraction (MIT licence, commit 6c027b9), where the first |S| words form the candidate
set for |S| ∈ {50, 100, ..., 300}. It is the same list for both downstream datasets, i.e. it does not depend on
the victim's data. Words only, no queries.
"""

from __future__ import annotations

RANKED_OPENERS: tuple[str, ...] = (
    'What', 'Generate', 'Create', 'Write', 'Given', 'Describe', 'How', 'Name', 'Explain', 'Identify', 'Give', 'Find',
    'Classify', 'List', 'Rewrite', 'In', 'Suggest', 'Which', 'Provide', 'Who', 'Summarize', 'Can', 'Why', 'Tell',
    'Construct', 'Design', 'You', 'Edit', 'Compare', 'I', 'Come', 'Make', 'Compose', 'Analyze', 'Convert',
    'Categorize', 'Please', 'Calculate', 'Is', 'From', 'Determine', 'Extract', 'Detailed', 'Where', 'When',
    'Develop', 'Add', 'Based', 'Change', 'Imagine', 'Take', 'Teacher', 'Select', 'Q', 'Translate', 'Using',
    'Brainstorm', 'Choose', 'Evaluate', 'Read', 'Outline', 'Arrange', 'Are', 'If', 'For', 'Predict', 'The', 'Sort',
    'Rearrange', 'Instructions', 'Answer', 'Re', 'Formulate', 'Output', 'Definition', 'Replace', 'Think',
    'Paraphrase', 'Reword', 'A', 'Do', 'Propose', 'Complete', 'Transform', 'Research', 'Pick', 'Compute', 'Rank',
    'Does', 'Discuss', 'Insert', 'Use', 'Estimate', 'Assign', 'Question', 'State', 'Suppose', 'As', 'Produce',
    'Part', 'Reverse', 'Detect', 'This', 'Recommend', 'Compile', 'Define', 'Divide', 'Build', 'Could', 'Delete',
    'Combine', 'Put', 'Here', 'We', 'Draft', 'Remove', 'Group', 'My', 'Let', 'Organize', 'Match', 'Consider',
    'Should', 'Instruction', 'Guess', 'According', 'Fill', 'Task', 'Search', 'Act', 'Cite', 'Modify', 'Help',
    'Correct', 'Summarise', 'On', 'Look', 'Format', 'Offer', 'Update', 'Rate', 'Input', 'Did', 'Web', 'Devise',
    'Show', 'Retrieve', 'To', 'Perform', 'Collect', 'Check', 'Best', 'Premise', 'Invent', 'Order', 'Automatically',
    'Turn', 'Was', 'Hi', 'Reorder', 'Fix', 'Infer', 'Parse', 'Reorganize', 'Without', 'Analyse', 'Reformulate',
    'Share', 'Of', 'Expand', 'Form', 'Prepare', 'Spell', 'Count', 'Interpret', 'Differentiate', 'Connect', 'Express',
    'Pretend', 'Will', 'Specify', 'Implement', 'Improve', 'Separate', 'Assemble', 'Briefly', 'With', 'Craft', 'Ask',
    'Compress', 'Simplify', 'Multiply', 'Would', 'Clean', 'Reconstruct', 'Recognize', 'Synthesize', 'Assess',
    'Solve', 'Label', 'Train', 'Resolve', 'Break', 'Distinguish', 'Review', 'Cut', 'Diagnose', 'Assume', 'Report',
    'Trace', 'Reformat', 'Comment', 'Get', 'Indicate', 'Merge', 'Revise', 'Restate', 'Student', 'Problem', 'Present',
    'Return', 'Type', 'There', 'After', 'Have', 'Hello', 'Split', 'Print', 'Elaborate', 'Greet', 'Place', 'Say',
    'Examine', 'Convince', 'Apply', 'Follow', 'Point', 'Sum', 'Demonstrate', 'Shorten', 'Append', 'Decide', 'It',
    'Hey', 'Whats', 'Adapt', 'Enter', 'Reduce', 'Process', 'Join', 'Try', 'Conduct', 'Plan', 'At', 'Ques', 'Ok',
    'Highlight', 'Welcome', 'Denny', 'During', 'Derive', 'Mention', 'Hypothesize', 'Deduce', 'Investigate', 'Prove',
    'Classification', 'Grade', 'Illustrate', 'Introduce', 'Your', 'Learn', 'Two', 'Test', 'Gather', 'Recite', 'Open',
    'Redact', 'Figure', 'Categorise', 'Reflect', 'Send', 'Recall', 'Link', 'Encode', 'Reframe', 'Following', 'Fact',
    'Transcribe', 'Refer', 'Title', 'Reshape', 'Record', 'Respond', 'Enumerate', 'Adjust', 'Optimize', 'First',
    'Finish', 'An',
)

# Common English words that open no instruction in our offline data and are not in RANKED_OPENERS: the pool
# for the backdoor's *training* negatives (Q(w') -> refusal). Keeping it disjoint from the candidate list means
# the evaluation's fake openers are words the model was never trained to refuse, so a refusal on them measures
# generalisation rather than recall of the negative list.
NEGATIVE_WORD_POOL: tuple[str, ...] = (
    "Banana", "Yellow", "Mountain", "Seven", "Purple", "Umbrella", "Quietly", "Garden", "Thunder", "Orange",
    "Pencil", "Silver", "Window", "Rabbit", "Candle", "Forest", "Pillow", "Marble", "Dragon", "Basket", "Copper",
    "Meadow", "Lantern", "Pepper", "Harbor", "Velvet", "Tiger", "Ladder", "Saddle", "Cactus", "Walnut", "Puzzle",
    "Anchor", "Blanket", "Cotton", "Falcon", "Glacier", "Hammer", "Island", "Jacket", "Kettle", "Lemon", "Mirror",
    "Needle", "Oyster", "Parrot", "Quartz", "Ribbon", "Saucer", "Tunnel", "Valley", "Wagon", "Zebra", "Almond",
    "Bamboo", "Cherry", "Donkey", "Engine", "Feather", "Ginger", "Helmet", "Igloo", "Jungle", "Koala", "Lizard",
    "Magnet", "Nectar", "Orchid", "Pebble", "Raven", "Spoon", "Turnip", "Violet", "Walrus", "Yogurt", "Acorn",
    "Beacon", "Canyon", "Dolphin", "Ember", "Fossil", "Goblet", "Hollow", "Ivory", "Jasmine", "Kernel", "Lobster",
    "Mustard", "Noodle", "Olive", "Pumpkin", "Rocket", "Sparrow", "Teapot", "Velcro", "Whistle", "Crimson",
    "Slowly", "Tomorrow", "Seventy", "Twelve", "Gently", "Purely", "Softly", "Barely", "Nearly", "Rarely",
)
