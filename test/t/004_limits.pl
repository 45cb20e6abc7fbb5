# Resource limits: a job whose tokenised rows, or whose rows with its
# training state, exceed peft.max_train_memory fails with an error naming the
# setting, and peft_train with no free
# background-worker slot fails at call time instead of losing the job.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;

# One worker slot, and 1 MB for tokenised rows.
my $node = PostgreSQL::Test::Cluster->new('limits');
$node->init;
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 1
max_logical_replication_workers = 0
peft.max_train_memory = 1024
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION peft;
	SELECT peft_register_model('tiny', '$tiny');
	CREATE TABLE big (id int PRIMARY KEY, body text, label text);
	INSERT INTO big
	SELECT i, repeat('good movie with our team today ', 8), CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END
	FROM generate_series(1, 5000) i;
	CREATE TABLE small AS SELECT * FROM big WHERE id <= 100;
});

# 5,000 rows of ~50 tokens need ~1 MB of ids: over the limit.
my ($rc, $out, $err) = $node->psql('postgres',
	"SELECT peft_train('big', 'tiny', 'big', 'body', 'label', options => '{\"epochs\": 1}', wait => true)");
isnt($rc, 0, 'a job over peft.max_train_memory fails');
like($err, qr/memory limit.*peft\.max_train_memory/, 'the error names the setting peft.max_train_memory');
is($node->safe_psql('postgres', "SELECT status FROM peft.jobs WHERE adapter = 'big'"),
	'failed', 'the job row says failed');
like($node->safe_psql('postgres', "SELECT error FROM peft.jobs WHERE adapter = 'big'"),
	qr/peft\.max_train_memory/, 'the job row keeps the error');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters"), '0', 'no adapter row');

# 100 rows fit, but the training state does not: the limit counts the
# activations of a 64-row batch (and parameters, moments, row orders) too.
($rc, $out, $err) = $node->psql('postgres',
	"SELECT peft_train('state', 'tiny', 'small', 'body', 'label', options => '{\"epochs\": 1, \"batch_size\": 64}', wait => true)");
like($err, qr/training needs \d+ kB \(rows \d+ kB, parameters and optimizer \d+ kB, activations \d+ kB\), over the memory limit of 1024 kB: raise peft\.max_train_memory/,
	'a job whose training state exceeds peft.max_train_memory fails, saying what it needs');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.adapters"), '0', 'no adapter row');

# The only worker slot busy (a job waiting for an open transaction): the
# next peft_train finds no slot and says so at call time, recording nothing.
my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe('BEGIN');
$holder->query_safe("SELECT peft_train('first', 'tiny', 'small', 'body', 'label', options => '{\"epochs\": 1}')");
($rc, $out, $err) = $node->psql('postgres',
	"SELECT peft_train('second', 'tiny', 'small', 'body', 'label', options => '{\"epochs\": 1}')");
isnt($rc, 0, 'peft_train without a free worker slot fails');
like($err, qr/no background worker slot is free/, 'the error says why');
like($err, qr/max_worker_processes/, 'and hints at max_worker_processes');
is($node->safe_psql('postgres', "SELECT count(*) FROM peft.jobs WHERE adapter = 'second'"),
	'0', 'no job row is left behind');
$holder->query_safe('ROLLBACK');
$holder->quit;

$node->stop;
done_testing();
