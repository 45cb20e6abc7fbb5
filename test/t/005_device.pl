# Device selection from SQL: the device and precision options and the
# peft.device / peft.precision settings.  Without a usable CUDA device,
# "cuda" is a clean ERROR (at call time for peft_train; at the call for
# peft_predict and peft_embed) and the connection goes on; "auto" computes
# on the CPU and the job's metrics say so.  With a device, training on
# CUDA records "cuda" and predicts the labels the CPU-trained adapter
# predicts on the training rows.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $tiny = $ENV{PEFT_TINY_MODEL_DIR};
plan skip_all => 'PEFT_TINY_MODEL_DIR is not set' unless $tiny && -d $tiny;

my $node = PostgreSQL::Test::Cluster->new('device');
$node->init;
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION peft;
	SELECT peft_register_model('tiny', '$tiny');
	CREATE TABLE reviews (id int PRIMARY KEY, body text, label text);
	INSERT INTO reviews
	SELECT i, CASE WHEN i % 2 = 0 THEN 'a good film ' ELSE 'an awful film ' END || i,
	       CASE WHEN i % 2 = 0 THEN 'pos' ELSE 'neg' END
	FROM generate_series(1, 200) i;
});
my $devices = $node->safe_psql('postgres', "SELECT (peft_engine_info()->>'cuda_devices')::int");

# Options are checked at call time whatever the machine.
my ($rc, $out, $err) = $node->psql('postgres',
	"SELECT peft_train('x', 'tiny', 'reviews', 'body', 'label', options => '{\"precision\": \"fp8\"}')");
isnt($rc, 0, 'an unknown precision is refused');
like($err, qr/precision.*must be fp32, tf32 or bf16/, 'naming the choices');
($rc, $out, $err) = $node->psql('postgres', "LOAD 'peft'; SET peft.precision = 'fp8'");
isnt($rc, 0, 'peft.precision accepts only fp32, tf32, bf16');
is($node->safe_psql('postgres', "SET peft.device_idle_release = '2min'; SHOW peft.device_idle_release"),
	'2min', 'peft.device_idle_release takes a time');

# auto: the job runs where it can, and its metrics say where.
$node->safe_psql('postgres',
	"SELECT peft_train('auto', 'tiny', 'reviews', 'body', 'label', "
	  . "options => '{\"epochs\": 3, \"learning_rate\": 0.01, \"device\": \"auto\"}', wait => true)");
my $where = $node->safe_psql('postgres', "SELECT metrics->>'device' FROM peft.adapters WHERE name = 'auto'");
is($where, $devices > 0 ? 'cuda' : 'cpu', "device auto trained on $where");
is($node->safe_psql('postgres', "SELECT metrics->>'device' FROM peft.jobs WHERE adapter = 'auto'"),
	$where, 'the job row records the device too');

if ($devices == 0)
{
	($rc, $out, $err) = $node->psql('postgres',
		"SELECT peft_train('x', 'tiny', 'reviews', 'body', 'label', options => '{\"device\": \"cuda\"}')");
	isnt($rc, 0, 'device cuda without a device fails at call time');
	like($err, qr/device "cuda" is not available/, 'saying so');
	is($node->safe_psql('postgres', "SELECT count(*) FROM peft.jobs WHERE adapter = 'x'"), '0',
		'and records no job');

	($rc, $out, $err) = $node->psql('postgres',
		"SET peft.device = 'cuda'; SELECT label FROM peft_predict('auto', 'a good film')");
	isnt($rc, 0, 'peft_predict with peft.device = cuda and no device fails');
	like($err, qr/cuda/, 'with an error about the device');
	($rc, $out, $err) = $node->psql('postgres',
		"SET peft.device = 'cuda'; SELECT peft_embed('tiny', 'a good film')");
	isnt($rc, 0, 'peft_embed with peft.device = cuda and no device fails');
	is($node->safe_psql('postgres',
		"SET peft.device = 'cuda'; DO \$\$ BEGIN PERFORM peft_embed('tiny', 'x'); "
		  . "EXCEPTION WHEN OTHERS THEN NULL; END \$\$; "
		  . "SET peft.device = 'cpu'; SELECT count(*) FROM peft_predict('auto', 'a good film 2')"),
		'1', 'after the error the same connection predicts on the CPU');
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"),
		'1', 'no backend crashed (the server did not restart)');
}
else
{
	$node->safe_psql('postgres',
		"SELECT peft_train('cpu', 'tiny', 'reviews', 'body', 'label', "
		  . "options => '{\"epochs\": 3, \"learning_rate\": 0.01, \"device\": \"cpu\"}', wait => true)");
	$node->safe_psql('postgres',
		"SELECT peft_train('gpu', 'tiny', 'reviews', 'body', 'label', "
		  . "options => '{\"epochs\": 3, \"learning_rate\": 0.01, \"device\": \"cuda\"}', wait => true)");
	is($node->safe_psql('postgres', "SELECT metrics->>'device' FROM peft.adapters WHERE name = 'gpu'"),
		'cuda', 'device cuda trains on CUDA');
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM reviews r, LATERAL peft_predict('cpu', r.body) c, "
		  . "LATERAL peft_predict('gpu', r.body) g WHERE c.label <> g.label"),
		'0', 'the CUDA-trained adapter predicts what the CPU-trained one does');
	is($node->safe_psql('postgres',
		"SET peft.device = 'cuda'; SELECT count(*) FROM reviews r, LATERAL peft_predict('cpu', r.body) p "
		  . "WHERE p.label <> r.label"),
		'0', 'predicting on CUDA gives the training labels');
}

$node->stop;
done_testing();
