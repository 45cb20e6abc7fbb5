# Replication: adapters are rows, so a streaming hot standby of a primary
# serves peft_predict (both forms) and peft_embed with the primary's results,
# follows a new version activated on the primary once it is replayed, and
# refuses peft_train and the other catalog writers with an ERROR that says to
# run them on the primary.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $primary = peft_node('primary', allows_streaming => 1);
$primary->safe_psql('postgres', reviews_sql('small', 200));
train_and_wait($primary, 'a', 'small');

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

# Every output of the three inference forms, as text (float8 text is exact).
my $INFERENCE = q{
	SELECT 'one ' || label || ' ' || score FROM peft_predict('a', 'the movie was great today')
	UNION ALL
	SELECT 'array ' || ord || ' ' || label || ' ' || score
	FROM peft_predict('a', ARRAY['the food was awful', 'we went to the river', NULL, 'excellent hotel'])
	UNION ALL
	SELECT 'embed ' || peft_embed('tiny', 'good service with our team')::text
	UNION ALL
	SELECT 'embed+adapter ' || peft_embed('tiny', 'good service with our team', 'a')::text
};
my $v1 = $primary->safe_psql('postgres', $INFERENCE);
is($standby->safe_psql('postgres', $INFERENCE), $v1,
	'the standby predicts and embeds exactly as the primary');
like($v1, qr/^one (positive|negative|neutral) 0\.\d+$/m, 'predictions are labels with scores');

# A second version, trained and activated on the primary, is used on the
# standby after replay; rolling back to version 1 on the primary too.  A
# session open on the standby throughout (its adapter cache is filled)
# follows each change as well as new sessions do.
my $session = $standby->background_psql('postgres', on_error_stop => 0);
is($session->query_safe($INFERENCE), $v1, 'a standby session predicts with version 1');
train_and_wait($primary, 'a', 'small', options => '{"epochs": 1, "batch_size": 8, "learning_rate": 0.003, "seed": 7}');
my $v2 = $primary->safe_psql('postgres', $INFERENCE);
isnt($v2, $v1, 'version 2 predicts differently from version 1');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $INFERENCE), $v2, 'after replay the standby uses version 2');
is($session->query_safe($INFERENCE), $v2, '... in the session that cached version 1 too');
$primary->safe_psql('postgres', q{SELECT peft_activate('a', 1)});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $INFERENCE), $v1,
	'after replay of a rollback to version 1 the standby uses version 1 again');
is($session->query_safe($INFERENCE), $v1, '... in the open session too');
$session->quit;

# Catalog writers refuse with a clear ERROR.
my ($rc, $out, $err) = $standby->psql('postgres',
	q{SELECT peft_train('b', 'tiny', 'small', 'body', 'sentiment')});
like($err, qr/ERROR:  peft_train cannot run on a standby server/, 'peft_train on the standby: ERROR');
like($err, qr/HINT:  Run peft_train on the primary/, '... with a hint to train on the primary');
note("standby refusal: $err");
for my $call (q{peft_activate('a', 2)}, q{peft_drop_adapter('a', 1)}, q{peft_merge('a')},
	q{peft_import('b', 'tiny', peft_export_config('a'), peft_export('a'))},
	q{peft_combine('b', ARRAY['a'], ARRAY[1.0])}, q{peft_cancel(1)},
	q{peft_register_model('t2', '/tmp')})
{
	($rc, $out, $err) = $standby->psql('postgres', "SELECT $call");
	my ($fn) = $call =~ /^(\w+)/;
	like($err, qr/ERROR:  $fn cannot run on a standby server/, "$fn on the standby: ERROR");
}
# Reading works there: the catalog, the jobs view, peft_verify_model (nothing recorded).
is($standby->safe_psql('postgres', q{SELECT count(*) FROM peft.adapters WHERE name = 'a'}), '2',
	'the standby has both versions');
is($standby->safe_psql('postgres', q{SELECT peft_verify_model('tiny')}), 't',
	'peft_verify_model answers on the standby');

$standby->stop;
$primary->stop;
done_testing();
