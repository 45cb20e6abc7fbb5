# Backup: pg_dump of a database with models, jobs and adapters (trained with
# several methods, imported, merged, with an older version kept), restored
# by pg_restore into a fresh database: every catalog row comes back, every
# adapter version predicts identically, and the restored database trains
# new jobs (job ids continue after the restored ones).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $node = peft_node('dump');
$node->safe_psql('postgres', reviews_sql('small', 200));
train_and_wait($node, 'lora', 'small');
train_and_wait($node, 'lora', 'small', options => '{"epochs": 1, "batch_size": 8, "seed": 3}');
train_and_wait($node, 'ia3', 'small', method => 'ia3');
train_and_wait($node, 'prompt', 'small', method => 'prompt');
train_and_wait($node, 'bottleneck', 'small', method => 'adapter');
$node->safe_psql('postgres', q{
	SELECT peft_activate('lora', 1);
	SELECT peft_import('copy', 'tiny', peft_export_config('ia3'), peft_export('ia3'),
	                   labels => (SELECT labels FROM peft.adapters WHERE name = 'ia3'));
	SELECT peft_merge('ia3');
});

# The texts every version of every adapter is scored on (version_predictions).
my $TEXTS = q{ARRAY['the movie was great today', 'the food was awful', 'we went to the river', 'excellent hotel room']};
my $CATALOG = q{
	SELECT 'model ' || name || ' ' || path || ' ' || checksum || ' ' || file_bytes || ' ' || coalesce(file_mtime::text, '-') FROM peft.models
	UNION ALL
	SELECT 'adapter ' || name || ' ' || version || ' ' || method || ' ' || task || ' ' || active || ' ' || merged
	       || ' ' || md5(weights) || ' ' || md5(config::text) || ' ' || coalesce(labels::text, '-') || ' ' || metrics::text
	FROM peft.adapters
	UNION ALL
	SELECT 'job ' || id || ' ' || adapter || ' ' || status || ' ' || coalesce(step, 0) || ' ' || loss_history::text FROM peft.jobs
	ORDER BY 1
};
my $before = version_predictions($node, 'postgres', $TEXTS);
my $catalog = $node->safe_psql('postgres', $CATALOG);
like($catalog, qr/^adapter copy 1 ia3/m, 'the source has an imported adapter');
like($catalog, qr/^adapter ia3 1 ia3 classification true true /m, '... a merged one');
like($catalog, qr/^adapter lora 2 lora classification false false /m, '... and an inactive version');

my $dump = $node->basedir . '/peft.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ], 'pg_restore');

is($node->safe_psql('restored', $CATALOG), $catalog,
	'models, adapter versions (weights, configs, labels, metrics, active, merged) and jobs are restored');
is(version_predictions($node, 'restored', $TEXTS), $before, 'every adapter version predicts identically after the restore');
my $embed = q{SELECT peft_embed('tiny', 'good service', 'lora')::text};
is($node->safe_psql('restored', $embed), $node->safe_psql('postgres', $embed), 'embeddings too');

# The restored database goes on: a new job gets a new id, its adapter a new version.
my $max_job = $node->safe_psql('restored', 'SELECT max(id) FROM peft.job_rows');
my $job = train_and_wait($node, 'lora', 'small', db => 'restored');
cmp_ok($job, '>', $max_job, "a job in the restored database gets a new id ($job > $max_job)");
is($node->safe_psql('restored', q{SELECT max(version) FROM peft.adapters WHERE name = 'lora'}), '3',
	'and its adapter version 3');

$node->stop;
done_testing();
